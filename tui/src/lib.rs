//! # vmxray-tui: the terminal browser
//!
//! This crate owns the ratatui/crossterm views over the anomalies, timelines, model state and
//! statistics that the other crates compute. It never parses or models anything itself.

#![forbid(unsafe_code)]
