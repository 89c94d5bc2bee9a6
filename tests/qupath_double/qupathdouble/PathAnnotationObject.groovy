package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathAnnotationObject: the only objects with a description, kept in the metadata
 * under ANNOTATION_DESCRIPTION (PathAnnotationObject.java 46, 72-86 in QuPath 0.6.0); null removes it.
 */
class PathAnnotationObject extends PathObject {
    static final String KEY_ANNOTATION_TEXT = 'ANNOTATION_DESCRIPTION'

    PathAnnotationObject(String name, Roi roi) { super(name, roi) }

    @Override
    boolean isAnnotation() { true }

    String getDescription() { getMetadata().get(KEY_ANNOTATION_TEXT) }

    void setDescription(String text) {
        QuPathDouble.calls << 'setDescription'
        if (text == null) {
            getMetadata().remove(KEY_ANNOTATION_TEXT)
        } else {
            getMetadata().put(KEY_ANNOTATION_TEXT, text)
        }
    }
}
