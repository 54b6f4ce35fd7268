//! Frames: the 9-byte header, the kinds, and the incremental deframer
//! (protocol.md §2, §3).
