//! Sealing message bodies: the age format (age-encryption.org/v1) with one X25519
//! recipient, the user's public key of one keyring generation.
//!
//! age gives a fresh file key per message, ChaCha20-Poly1305 STREAM chunks of 64 KiB with
//! authenticated order and end, and a format a user can decrypt with the standard `age`
//! tool and their exported identity. Inside the encryption the plaintext is
//!
//! ```text
//! "CFB1" | user_id (32) | blob_id (16) | body length (u64 BE) | body | zero padding
//! ```
//!
//! so that a blob moved to another user or message is detected, and the stored size is
//! padded with Padmé (Nikitin et al., PETS 2019) to hide the exact size.

use crate::primitives::OpenFailed;
use crate::secret::SecretBytes;
use coffer_types::{BlobId, UserId};
use std::io::{Read, Write};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

pub const BODY_MAGIC: &[u8; 4] = b"CFB1";
const HEADER_LEN: usize = 4 + 32 + 16 + 8;
/// Bodies are padded to at least this many bytes before Padmé rounding.
pub const MIN_PADDED: u64 = 1024;

/// Padmé: rounds `len` up so that at most O(log log len) bits of the length leak.
pub fn padme(len: u64) -> u64 {
    let len = len.max(MIN_PADDED);
    let e = 63 - len.leading_zeros() as u64; // floor(log2 len)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

fn bech32_key(hrp: &str, bytes: &[u8; 32]) -> Zeroizing<String> {
    let hrp = bech32::Hrp::parse(hrp).expect("static HRP is valid");
    Zeroizing::new(bech32::encode::<bech32::Bech32>(hrp, bytes).expect("32 bytes fit Bech32"))
}

/// The age recipient for an X25519 public key.
pub fn age_recipient(pk: &PublicKey) -> age::x25519::Recipient {
    bech32_key("age", pk.as_bytes())
        .parse()
        .expect("a Bech32 X25519 key is a valid age recipient")
}

/// The age identity for an X25519 secret key.
pub fn age_identity(sk: &StaticSecret) -> age::x25519::Identity {
    let mut bytes = sk.to_bytes();
    let encoded = bech32_key("age-secret-key-", &bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    let upper = Zeroizing::new(encoded.to_uppercase());
    upper
        .parse()
        .expect("a Bech32 X25519 secret is a valid age identity")
}

/// Length of the sealed blob for a body of `body_len` bytes (before age's own framing).
pub fn padded_plaintext_len(body_len: u64) -> u64 {
    padme(HEADER_LEN as u64 + body_len)
}

/// Seals `body` for the holder of `recipient`'s secret key.
pub fn seal_body(recipient: &PublicKey, user: &UserId, blob: &BlobId, body: &[u8]) -> Vec<u8> {
    let total = padded_plaintext_len(body.len() as u64);
    let mut out = Vec::with_capacity(total as usize + 256 + (total as usize / 65536 + 1) * 16);
    seal_body_to(recipient, user, blob, body, &mut out).expect("writing to memory cannot fail");
    out
}

/// Seals `body` straight into `out` (a blob file being written), so a large message is
/// never held in memory twice, plaintext and ciphertext.
pub fn seal_body_to(
    recipient: &PublicKey,
    user: &UserId,
    blob: &BlobId,
    body: &[u8],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let r = age_recipient(recipient);
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        .expect("one X25519 recipient is always valid");
    let total = padded_plaintext_len(body.len() as u64);
    let mut w = encryptor.wrap_output(out)?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(BODY_MAGIC);
    header[4..36].copy_from_slice(user.as_bytes());
    header[36..52].copy_from_slice(blob.as_bytes());
    header[52..60].copy_from_slice(&(body.len() as u64).to_be_bytes());
    let pad = total as usize - HEADER_LEN - body.len();
    let zeros = [0u8; 4096];
    w.write_all(&header)?;
    w.write_all(body)?;
    let mut left = pad;
    while left > 0 {
        let n = left.min(zeros.len());
        w.write_all(&zeros[..n])?;
        left -= n;
    }
    w.finish()?;
    Ok(())
}

/// Opens a sealed body, checking that it belongs to `user` and `blob`.
pub fn open_body(
    identity: &StaticSecret,
    user: &UserId,
    blob: &BlobId,
    sealed: &[u8],
) -> Result<SecretBytes, OpenFailed> {
    let mut reader = open_body_reader(identity, user, blob, sealed)?;
    // Exactly the body into a buffer of its size (no shifting of a large body); the
    // reader checks the padding to its end, so the last chunk's tag is verified.
    if reader.len() > sealed.len() as u64 {
        return Err(OpenFailed);
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(reader.len() as usize));
    reader.read_to_end(&mut plain).map_err(|_| OpenFailed)?;
    Ok(plain)
}

/// A sealed body opened for reading as it streams from storage: [`Read`] yields exactly the
/// body, then checks the padding to its end, so the last chunk's tag and the stream's end
/// are verified before the reader reports the end. Every byte it yields comes from a chunk
/// whose tag was checked (age's STREAM); a tampered chunk, a truncation or a wrong blob is
/// a read error, and whatever was already handed out must then be abandoned.
pub struct BodyReader<R: std::io::BufRead> {
    inner: crate::age_open::PayloadReader<R>,
    len: u64,
    left: u64,
    finished: bool,
}

impl<R: std::io::BufRead> BodyReader<R> {
    /// The body length the sealed header states (checked against the sealed metadata by
    /// the caller).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: std::io::BufRead> Read for BodyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if !self.finished {
                // The padding, read to its end: the final chunk's tag is checked here.
                let mut rest = [0u8; 4096];
                while self.inner.read(&mut rest)? > 0 {}
                self.finished = true;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "sealed body ends early",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a sealed body from a reader (a blob file), checking its header as
/// [`open_body`] does, without reading the whole blob into memory.
pub fn open_body_reader<R: std::io::BufRead>(
    identity: &StaticSecret,
    user: &UserId,
    blob: &BlobId,
    sealed: R,
) -> Result<BodyReader<R>, OpenFailed> {
    // The age format, read by our own header check and ring's ChaCha20-Poly1305
    // (src/age_open.rs says why); the age crate still unwraps the file key.
    let id = age_identity(identity);
    let mut inner = crate::age_open::open(&id, sealed)?;
    let mut header = [0u8; HEADER_LEN];
    inner.read_exact(&mut header).map_err(|_| OpenFailed)?;
    if &header[..4] != BODY_MAGIC
        || &header[4..36] != user.as_bytes()
        || &header[36..52] != blob.as_bytes()
    {
        return Err(OpenFailed);
    }
    let len = u64::from_be_bytes(header[52..60].try_into().map_err(|_| OpenFailed)?);
    Ok(BodyReader {
        inner,
        len,
        left: len,
        finished: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticSecret, PublicKey) {
        let sk = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let pk = PublicKey::from(&sk);
        (sk, pk)
    }

    #[test]
    fn padme_matches_the_paper() {
        // Padmé leaves at most log2(log2 L)+1 low bits significant.
        assert_eq!(padme(0), 1024);
        assert_eq!(padme(1024), 1024);
        assert_eq!(padme(1025), 1088);
        assert_eq!(padme(10_000), 10_240);
        assert_eq!(padme(1_000_000), 1_015_808);
        for l in [1500u64, 77_777, 10 * 1024 * 1024 + 3] {
            let p = padme(l);
            assert!(p >= l && (p - l) as f64 / l as f64 <= 0.12, "{l} -> {p}");
        }
    }

    #[test]
    fn round_trip_small_and_multi_chunk() {
        let (sk, pk) = keys();
        let user = UserId([1; 32]);
        let blob = BlobId([2; 16]);
        for size in [0usize, 1, 1000, 65_536 * 3 + 17] {
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sealed = seal_body(&pk, &user, &blob, &body);
            assert_eq!(
                open_body(&sk, &user, &blob, &sealed).unwrap().as_slice(),
                body.as_slice()
            );
        }
    }

    #[test]
    fn sealed_size_hides_the_exact_size() {
        let (_, pk) = keys();
        let (u, b) = (UserId([1; 32]), BlobId([2; 16]));
        let a = seal_body(&pk, &u, &b, &[b'x'; 100]);
        let c = seal_body(&pk, &u, &b, &[b'x'; 900]);
        // Both pad to the same 1 KiB bucket; age adds a random "grease" stanza to some
        // headers, so lengths vary by that header noise only, never by the body size.
        assert!(a.len() >= 1024 + 16 && c.len() >= 1024 + 16);
        assert!(
            a.len().abs_diff(c.len()) < 400,
            "{} vs {}",
            a.len(),
            c.len()
        );
    }

    #[test]
    fn tampering_wrong_key_and_wrong_place_are_detected() {
        let (sk, pk) = keys();
        let (u, b) = (UserId([1; 32]), BlobId([2; 16]));
        let sealed = seal_body(&pk, &u, &b, b"Subject: hi\r\n\r\nbody");
        // Flip one byte at a time across header, first chunk and tag.
        for i in (0..sealed.len()).step_by(7) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            assert!(open_body(&sk, &u, &b, &bad).is_err(), "byte {i}");
        }
        assert!(
            open_body(&sk, &u, &b, &sealed[..sealed.len() - 1]).is_err(),
            "truncated"
        );
        let (other, _) = keys();
        assert!(open_body(&other, &u, &b, &sealed).is_err());
        assert!(
            open_body(&sk, &UserId([9; 32]), &b, &sealed).is_err(),
            "other user"
        );
        assert!(
            open_body(&sk, &u, &BlobId([9; 16]), &sealed).is_err(),
            "other blob"
        );
    }

    #[test]
    fn streamed_open_matches_and_detects_tampering() {
        let (sk, pk) = keys();
        let (u, b) = (UserId([1; 32]), BlobId([2; 16]));
        let body: Vec<u8> = (0..65_536 * 3 + 100).map(|i| (i % 253) as u8).collect();
        let sealed = seal_body(&pk, &u, &b, &body);
        let mut r = open_body_reader(&sk, &u, &b, sealed.as_slice()).unwrap();
        assert_eq!(r.len(), body.len() as u64);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, body);
        // A flipped byte in a middle chunk: an error, never wrong bytes.
        let mut bad = sealed.clone();
        let at = sealed.len() / 2;
        bad[at] ^= 1;
        let mut r = open_body_reader(&sk, &u, &b, bad.as_slice()).unwrap();
        let mut got = Vec::new();
        assert!(r.read_to_end(&mut got).is_err());
        assert!(body.starts_with(&got), "only authenticated bytes came out");
        // Truncated: the end is never reported as a clean end.
        let cut = &sealed[..sealed.len() - 100];
        let mut r = open_body_reader(&sk, &u, &b, cut).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        // Another blob's id: refused at the header.
        assert!(open_body_reader(&sk, &u, &BlobId([3; 16]), sealed.as_slice()).is_err());
    }

    #[test]
    fn recipient_and_identity_strings_are_age_compatible() {
        let (sk, pk) = keys();
        let r = age_recipient(&pk).to_string();
        assert!(r.starts_with("age1"));
        let id = age_identity(&sk);
        assert_eq!(id.to_public().to_string(), r);
    }
}
