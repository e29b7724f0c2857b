//! The HTTP surfaces.
