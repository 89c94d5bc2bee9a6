package qupathdouble

/**
 * TEST DOUBLE of QuPath's project (qupath-core .../projects/DefaultProject.java in QuPath 0.6.0; 0.7.0 the same
 * there): its image entries, `getEntry(imageData)` and `syncChanges()`. `written` is what the last syncChanges
 * put on disk (each entry's metadata), so a test sees whether the glue saved the project, not only the map.
 */
class Project {
    static final String IMAGE_ID = 'PROJECT_ENTRY_ID' // DefaultProject.java:90
    private final File file
    private final List<ProjectImageEntry> images = []
    final Map<String, Map<String, String>> written = [:]

    Project(File file) { this.file = file }

    /**
     * An image added to the project and opened from it: the entry's readImageData sets the image's property
     * PROJECT_ENTRY_ID to "<project file>::<entry id>" (DefaultProject.java 539-541, 686), by which getEntry
     * finds it again.
     */
    ProjectImageEntry addImage(ImageData imageData) {
        ProjectImageEntry entry = new ProjectImageEntry(file.absolutePath + '::' + (images.size() + 1), imageData)
        images << entry
        imageData.setProperty(IMAGE_ID, entry.fullProjectEntryID)
        imageData.@changed = false // as read from the project (`.changed =` would call its setProperty)
        return entry
    }

    /** DefaultProject.java 318-325: the entry whose full id is the image's PROJECT_ENTRY_ID, else null. */
    ProjectImageEntry getEntry(ImageData imageData) {
        Object id = imageData.getProperties().get(IMAGE_ID)
        return images.find { it.fullProjectEntryID == id }
    }

    /** DefaultProject.java 238-240: the project file (project.qpproj), not its folder. */
    java.nio.file.Path getPath() { file.toPath() }

    /** Project.java:216: the entries, in the project's order. */
    List<ProjectImageEntry> getImageList() { new ArrayList(images) }

    /** DefaultProject.java 343-347: writes the project file (987-1008: the entries, their metadata with them). */
    void syncChanges() {
        QuPathDouble.calls << 'syncChanges'
        images.each { written[it.fullProjectEntryID] = new LinkedHashMap(it.getMetadata()) }
    }
}
