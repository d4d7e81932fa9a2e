//! Small helpers the rest of the crate shares, each written once: finding a program on
//! `PATH` and replacing a file atomically ([`fs`]), time stamps ([`time`]), and the start-up
//! phase timer behind `husk run --timings` ([`timings`]), and the descriptors a helper daemon
//! inherits ([`inherited`]).

pub mod fs;
pub mod inherited;
pub mod privilege;
pub mod time;
pub mod timings;
