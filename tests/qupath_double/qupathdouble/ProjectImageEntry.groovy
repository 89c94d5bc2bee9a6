package qupathdouble

/**
 * TEST DOUBLE of QuPath's ProjectImageEntry (DefaultProject.DefaultProjectImageEntry in QuPath 0.6.0): its
 * metadata, a thread-safe modifiable map of strings (DefaultProject.java 447, 606-615) saved to the project file
 * only by Project.syncChanges(). ProjectImageEntry.java 128-141 deprecates putMetadataValue in 0.6.0 for
 * getMetadata().put, so the double offers only getMetadata.
 */
class ProjectImageEntry {
    final String fullProjectEntryID // DefaultProject.java 539-541: "<project file>::<entry id>"
    private final Map<String, String> metadata = Collections.synchronizedMap(new LinkedHashMap<String, String>())

    ProjectImageEntry(String fullProjectEntryID) { this.fullProjectEntryID = fullProjectEntryID }

    Map<String, String> getMetadata() { metadata }
}
