package antonibridge

/** A refusal: `code` as in the protocol's error replies, a sentence and a hint for the user. */
class Problem extends RuntimeException {
    final String code
    final String hint

    Problem(String code, String message, String hint) {
        super(message)
        this.code = code
        this.hint = hint
    }
}
