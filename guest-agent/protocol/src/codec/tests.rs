//! Codec tests: one sample of every message, round trips, hostile input, a fuzz loop.

mod fixtures;
mod fuzz;
mod malformed;
mod roundtrip;
