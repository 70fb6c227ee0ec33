//! One module per wire protocol: the only code that parses or builds frames.

pub mod browser;
