package qupathdouble

/**
 * TEST DOUBLE of QuPath's ProjectImageEntry (DefaultProject.DefaultProjectImageEntry in QuPath 0.6.0): its
 * metadata, a thread-safe modifiable map of strings (DefaultProject.java 447, 606-615) saved to the project file
 * only by Project.syncChanges(); its image's URIs and name. ProjectImageEntry.java 128-141 deprecates putMetadataValue in 0.6.0 for
 * getMetadata().put, so the double offers only getMetadata.
 */
class ProjectImageEntry {
    final String fullProjectEntryID // DefaultProject.java 539-541: "<project file>::<entry id>"
    private final Map<String, String> metadata = Collections.synchronizedMap(new LinkedHashMap<String, String>())
    final ImageData imageData // what QuPath's readImageData would give (the double keeps the one added)

    ProjectImageEntry(String fullProjectEntryID, ImageData imageData) {
        this.fullProjectEntryID = fullProjectEntryID
        this.imageData = imageData
    }

    /** UriResource.getURIs (UriResource.java:58; DefaultProject.java 549-553: the server builder's URIs). */
    Collection<URI> getURIs() throws IOException { imageData.getServer().getURIs() }

    /** ProjectImageEntry.java:78: the name shown in the project list (here the file's name). */
    String getImageName() { new File(getURIs().iterator().next().path).name }

    Map<String, String> getMetadata() { metadata }
}
