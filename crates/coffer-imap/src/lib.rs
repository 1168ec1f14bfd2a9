//! The IMAP server: IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) with the extensions real
//! clients use, over TLS, on Coffer's encrypted store.
#![forbid(unsafe_code)]

mod cmd_mailbox;
mod cmd_message;
pub mod connection;
pub use coffer_mail::mime;
pub mod mutf7;
pub mod parse;
pub mod response;
mod search;
pub mod server;
pub mod session;
pub mod sortthread;
pub mod types;
