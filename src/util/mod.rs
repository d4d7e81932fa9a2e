//! Small helpers the rest of the crate shares, each written once: finding a program on
//! `PATH` and replacing a file atomically ([`fs`]), and time stamps ([`time`]).

pub mod fs;
pub mod time;
