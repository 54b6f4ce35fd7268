//! execnet-bootstrap (being written).
