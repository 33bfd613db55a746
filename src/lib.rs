//! The `flotilla` command line.
//!
//! - [`cli`]: argument definitions and one function per subcommand.

pub mod cli;
