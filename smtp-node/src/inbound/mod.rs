//! The SMTP server: listeners, sessions, and the rules that keep it strict and safe.
//!
//! `server` accepts connections and enforces connection limits; `session` runs the
//! protocol; `io` reads command lines, DATA and BDAT byte-exact; `reply` holds the
//! replies; `received` writes the trace header; `tls` serves the listener certificate and
//! reloads it when its files change.

pub mod io;
pub mod received;
pub mod reply;
pub mod server;
pub mod session;
pub mod tls;

pub use server::{Bound, ServerError, bind, serve};
pub use session::{Listener, MAX_COMMAND_LINE, Session, Shared};
pub use tls::{CertError, CertStore};
