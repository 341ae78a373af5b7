"""Generated gRPC contract code (package exeunit.v1). Regenerate with scripts/gen_proto.py."""
