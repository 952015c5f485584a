//! The `vmxray` command: parses arguments and calls the crates.

fn main() {}
