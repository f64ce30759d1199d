"""HTTP API: native REST under /v1, the E2B-compatible surfaces, errors, auth, streaming."""

from fastapi.telemetry import TelemetryConfig

# FastAPI's native OpenTelemetry, off in every app of the server: Corral exports no telemetry, and
# the check costs every request a look-up of three global providers (seen in py-spy profiles of the
# request path).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
