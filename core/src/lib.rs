//! execnet-core (being written).
