"""Stubs generated from protos/impasto/v1/impasto.proto by install.sh (grpcio-tools); never edit them."""
