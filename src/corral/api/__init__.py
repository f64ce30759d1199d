"""HTTP API: native REST under /v1 (E2B-compatible surfaces come later), errors, auth, streaming."""
