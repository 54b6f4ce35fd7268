//! execnet (being written).
