//! LMTP (RFC 2033) delivery into Coffer, on TCP and on a unix socket, and the shared
//! delivery logic of `coffer deliver`.
//!
//! Every message is sealed to its recipient's public key in memory and written only as
//! ciphertext ([`coffer_mail::Mail::deliver`]); a recipient gets its 250 only after the
//! sealed blob and row are durable. One reply per accepted recipient follows DATA or the
//! last BDAT chunk, as RFC 2033 §4.2 requires.
#![forbid(unsafe_code)]

mod session;

pub use session::{
    add_trace_headers, resolve_recipient, serve_tcp, serve_tcp_with_tls, serve_unix, LmtpConfig,
    Recipient, ResolveError,
};
