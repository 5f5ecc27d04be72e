//! Benchmarks run by the `bench` binary. Each prints flotilla and a reference side by side and
//! ends with one `RESULT ...` line.

pub mod fanout;
