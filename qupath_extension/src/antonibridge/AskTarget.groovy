package antonibridge

/**
 * What a question is about: a slide file, optionally a region of it in level-0 pixels, and the annotations
 * (if any) the answer is saved with. Built by QuPathGlue from QuPath's current image and selection.
 */
class AskTarget {
    String key // one conversation per key: the slide, or the slide and the annotations' ids
    String label
    String slide
    Map region // a GeoJSON Polygon or MultiPolygon, or null for the whole slide
    Double mpp // QuPath's pixel size, sent in case the file has none
    List objects = [] // the annotations the answer is saved with
    Object hierarchy // their hierarchy, told of the change so that QuPath saves it
    Object imageData // QuPath's image the question is about: answers are saved only while it is open
    String savedConversation // JSON of an earlier conversation stored with the annotation

    /** The protocol's source fields for this target: the slide, its region if any, QuPath's pixel size. */
    Map source() {
        Map content = [slide: slide]
        if (region != null) {
            content.region = region
        }
        if (mpp != null) {
            content.slide_mpp = mpp
        }
        return content
    }

    /** The content of the protocol's `ask` request for this target and conversation. */
    Map request(List<Map> conversation, Map options) {
        Map content = source() + [conversation: conversation]
        if (options) { // only the options the user set: the daemon has the defaults
            content.options = options
        }
        return content
    }
}
