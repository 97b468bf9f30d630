//! The MailDomain controller.

pub mod duration;
pub mod keys;
pub mod settings;
pub mod status;
