//! One module per wire protocol: the only code that parses or builds frames.

pub mod browser;
pub mod mistral;
pub mod thoth_legacy;
pub mod thoth_mux;
