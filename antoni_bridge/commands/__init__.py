"""The `antoni-bridge` commands, one module each; `antoni_bridge.cli` builds the parser from them."""
