//! Shared harness for the integration tests (being written).
