//! Opening age files (age-encryption.org/v1) sealed to one X25519 identity, with the
//! payload decrypted by ring's ChaCha20-Poly1305 instead of the age crate's RustCrypto
//! one.
//!
//! Why: streaming a large body was 45 % ChaCha20/Poly1305 in the age crate's
//! `StreamReader` plus 6 % copying each chunk out of its buffer (bench/README.md, "Fourth
//! pass"), and ring runs the same AEAD about 1.65 times as fast on the bench machines. The
//! age crate does not hand out the file key, so this module reads the header itself.
//! Sealing stays with the age crate, and so does everything that touches the X25519 key:
//! the recipient stanza is parsed by age-core's own parser and unwrapped by
//! `age::x25519::Identity`. What is ours is small and follows the age specification
//! (<https://age-encryption.org/v1>, C2SP age.md):
//!
//! - the header is the version line, one or more stanzas and the MAC line
//!   `--- <base64 HMAC>`; the HMAC-SHA-256 under `HKDF-SHA-256(ikm = file key,
//!   salt = empty, info = "header")` covers the header up to and including `---`;
//! - the payload is a 16-byte nonce, then STREAM chunks of 64 KiB of plaintext plus a
//!   16-byte tag, under `HKDF-SHA-256(ikm = file key, salt = nonce, info = "payload")`,
//!   each chunk's ChaCha20-Poly1305 nonce being an 11-byte big-endian counter and a byte
//!   that is 1 for the last chunk only; the last chunk may be full, and may be empty only
//!   when the whole payload is.
//!
//! The tests check it against the age crate both ways (every file age writes opens here
//! with the same bytes; what age rejects, this rejects).

use crate::primitives::OpenFailed;
use age::secrecy::ExposeSecret;
use age_core::format::Stanza;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;
use std::io::{BufRead, Read};
use zeroize::Zeroizing;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const MAC_PREFIX: &[u8] = b"--- ";
/// 32 bytes in unpadded base64.
const ENCODED_MAC_LEN: usize = 43;
/// Longest header read before giving up. Coffer's headers are one X25519 stanza and at
/// most one grease stanza (age adds one at random): well under 1 KiB.
const MAX_HEADER: u64 = 16 * 1024;
const PAYLOAD_NONCE_LEN: usize = 16;
/// age's STREAM chunk: 64 KiB of plaintext, then the 16-byte Poly1305 tag.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const SEALED_CHUNK: usize = CHUNK + TAG;
/// A sealed chunk and the first byte after it: whether that byte exists tells whether the
/// chunk is the last, without a buffered peek (which would copy every chunk once more).
const READ_AHEAD: usize = SEALED_CHUNK + 1;

/// HKDF-SHA-256 as age derives its keys. Not age-core's `primitives::hkdf`, which returns
/// the key in a plain array: this one expands it straight into memory wiped on drop.
fn hkdf_sha256(salt: &[u8], info: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    okm
}

/// Reads and checks the header of an age file sealed to `identity`, then the payload
/// nonce: the reader that follows yields the plaintext.
pub fn open<R: BufRead>(
    identity: &age::x25519::Identity,
    mut input: R,
) -> Result<PayloadReader<R>, OpenFailed> {
    // The header, line by line, up to and including the MAC line.
    let mut header = Vec::with_capacity(512);
    let mac_line = loop {
        let start = header.len();
        let room = MAX_HEADER.saturating_sub(start as u64);
        if room == 0 {
            return Err(OpenFailed);
        }
        let n = (&mut input)
            .take(room)
            .read_until(b'\n', &mut header)
            .map_err(|_| OpenFailed)?;
        if n == 0 || header.last() != Some(&b'\n') {
            return Err(OpenFailed);
        }
        if header[start..].starts_with(MAC_PREFIX) {
            break start;
        }
    };
    let (body, mac_text) = header.split_at(mac_line);
    // "--- " + 43 characters + "\n"; the MAC covers everything before the space.
    if mac_text.len() != MAC_PREFIX.len() + ENCODED_MAC_LEN + 1 {
        return Err(OpenFailed);
    }
    let mac = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&mac_text[MAC_PREFIX.len()..MAC_PREFIX.len() + ENCODED_MAC_LEN])
        .map_err(|_| OpenFailed)?;
    let stanzas_text = body.strip_prefix(VERSION_LINE).ok_or(OpenFailed)?;
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut rest = stanzas_text;
    while !rest.is_empty() {
        // The parser the age crate itself reads headers with (it accepts both the
        // canonical and the older line wrapping of stanza bodies).
        match age_core::format::read::legacy_age_stanza(rest) {
            Ok((r, s)) if r.len() < rest.len() => {
                stanzas.push(s.into());
                rest = r;
            }
            _ => return Err(OpenFailed),
        }
    }
    if stanzas.is_empty() {
        return Err(OpenFailed);
    }
    let file_key = stanzas
        .iter()
        .find_map(|s| age::Identity::unwrap_stanza(identity, s))
        .ok_or(OpenFailed)?
        .map_err(|_| OpenFailed)?;
    let file_key = file_key.expose_secret();
    let mac_key = hkdf_sha256(&[], b"header", file_key);
    let mut check =
        <Hmac<Sha256> as Mac>::new_from_slice(mac_key.as_ref()).expect("HMAC takes any key size");
    check.update(&header[..mac_line + MAC_PREFIX.len() - 1]);
    // Constant time (hmac's verify_slice).
    check.verify_slice(&mac).map_err(|_| OpenFailed)?;

    let mut nonce = [0u8; PAYLOAD_NONCE_LEN];
    input.read_exact(&mut nonce).map_err(|_| OpenFailed)?;
    let payload_key = hkdf_sha256(&nonce, b"payload", file_key);
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, payload_key.as_ref())
            .expect("a 32-byte key is a valid ChaCha20-Poly1305 key"),
    );
    Ok(PayloadReader {
        input,
        key,
        counter: 0,
        buf: Zeroizing::new(vec![0u8; READ_AHEAD]),
        carry: None,
        pos: 0,
        end: 0,
        done: false,
        failed: false,
    })
}

/// The plaintext of an age payload, chunk by chunk: every byte it yields comes from a
/// chunk whose tag was checked, in order. A tampered, reordered, dropped or appended chunk
/// is a read error (`InvalidData`), and so is a payload that ends before its last chunk.
/// After the last chunk, `read` returns 0.
pub struct PayloadReader<R> {
    input: R,
    key: LessSafeKey,
    counter: u64,
    /// The current chunk, opened in place; `pos..end` is what is left to hand out.
    buf: Zeroizing<Vec<u8>>,
    /// The first byte of the next sealed chunk, read with the one before it.
    carry: Option<u8>,
    pos: usize,
    end: usize,
    done: bool,
    /// A chunk failed its check (or the source failed): every later read fails too.
    failed: bool,
}

fn broken() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "sealed body fails its check",
    )
}

impl<R: Read> PayloadReader<R> {
    /// Reads the next sealed chunk into `into` (at least [`READ_AHEAD`] bytes) and opens
    /// it there: the plaintext length.
    fn next_chunk(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        let into = &mut into[..READ_AHEAD];
        let mut n = 0;
        if let Some(b) = self.carry.take() {
            into[0] = b;
            n = 1;
        }
        while n < READ_AHEAD {
            match self.input.read(&mut into[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A chunk is the last one when nothing follows it; a byte that does follow it
        // belongs to the next chunk.
        let last = n <= SEALED_CHUNK;
        if !last {
            self.carry = Some(into[SEALED_CHUNK]);
            n = SEALED_CHUNK;
        }
        if n < TAG || (last && n == TAG && self.counter > 0) {
            // Too short for a tag, or an empty last chunk after others (age's rule: the
            // last chunk is empty only when the whole payload is).
            return Err(broken());
        }
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&self.counter.to_be_bytes());
        nonce[11] = u8::from(last);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut into[..n],
            )
            .map_err(|_| broken())?;
        let len = plain.len();
        self.counter += 1;
        self.done = last;
        Ok(len)
    }
}

impl<R: Read> Read for PayloadReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.failed {
            return Err(broken());
        }
        if self.pos == self.end {
            if self.done {
                return Ok(0);
            }
            if out.len() >= READ_AHEAD {
                // Room for a whole sealed chunk: opened in the caller's buffer, no copy.
                let got = self.next_chunk(out);
                self.failed = got.is_err();
                return got;
            }
            let mut buf = std::mem::take(&mut self.buf);
            let got = self.next_chunk(&mut buf);
            self.buf = buf;
            self.pos = 0;
            self.failed = got.is_err();
            self.end = got.unwrap_or(0);
            if self.failed {
                return Err(broken());
            }
            if self.end == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn identity() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    fn seal(id: &age::x25519::Identity, plain: &[u8]) -> Vec<u8> {
        let r = id.to_public();
        let e =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    fn ours(id: &age::x25519::Identity, sealed: &[u8], step: usize) -> Result<Vec<u8>, ()> {
        let mut r = open(id, sealed).map_err(|_| ())?;
        let mut plain = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(plain),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(_) => return Err(()),
            }
        }
    }

    fn theirs(id: &age::x25519::Identity, sealed: &[u8]) -> Result<Vec<u8>, ()> {
        let d = age::Decryptor::new_buffered(sealed).map_err(|_| ())?;
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .map_err(|_| ())?;
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).map_err(|_| ())?;
        Ok(plain)
    }

    /// Sizes around every chunk boundary that matters, read with buffers smaller than,
    /// equal to and larger than a sealed chunk (the in-place path).
    #[test]
    fn opens_what_age_seals_with_the_same_bytes() {
        let id = identity();
        for size in [
            0usize,
            1,
            1000,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            2 * CHUNK + TAG,
            3 * CHUNK + 17,
        ] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let sealed = seal(&id, &plain);
            for step in [1000, SEALED_CHUNK, READ_AHEAD, 256 * 1024] {
                assert_eq!(
                    ours(&id, &sealed, step).unwrap(),
                    plain,
                    "size {size} step {step}"
                );
            }
            assert_eq!(theirs(&id, &sealed).unwrap(), plain);
        }
    }

    /// A source that hands out a few hundred bytes per read (as a socket or a small file
    /// buffer may), behind a small BufReader: chunks are put together across reads.
    #[test]
    fn short_reads_from_the_source_are_put_together() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(self.0.len()).min(777);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let id = identity();
        for size in [0usize, CHUNK, 2 * CHUNK + 5] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            let sealed = seal(&id, &plain);
            for step in [100, READ_AHEAD] {
                let src = std::io::BufReader::with_capacity(100, Trickle(&sealed));
                let mut r = open(&id, src).unwrap();
                let mut got = Vec::new();
                let mut buf = vec![0u8; step];
                loop {
                    match r.read(&mut buf).unwrap() {
                        0 => break,
                        n => got.extend_from_slice(&buf[..n]),
                    }
                }
                assert_eq!(got, plain, "size {size} step {step}");
            }
        }
    }

    #[test]
    fn the_wrong_identity_opens_nothing() {
        let sealed = seal(&identity(), b"for someone else");
        assert!(open(&identity(), sealed.as_slice()).is_err());
    }

    /// Every single-byte change anywhere (header, stanza, MAC, nonce, chunks) and every
    /// truncation is refused, as the age crate refuses it.
    #[test]
    fn every_change_and_truncation_is_refused() {
        let id = identity();
        let plain: Vec<u8> = (0..2 * CHUNK + 100).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&id, &plain);
        let header_end = sealed.windows(4).position(|w| w == b"--- ").unwrap() + 48;
        // Every byte of the header and nonce, then a sample of the payload.
        let positions = (0..header_end + PAYLOAD_NONCE_LEN)
            .chain((header_end + PAYLOAD_NONCE_LEN..sealed.len()).step_by(997))
            .chain([sealed.len() - 1]);
        for i in positions {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let got = ours(&id, &bad, SEALED_CHUNK);
            assert!(got.is_err(), "flipping byte {i} went unnoticed");
            assert!(theirs(&id, &bad).is_err(), "age itself refuses byte {i}");
        }
        // Cut at each chunk boundary and inside chunks: never the whole plaintext.
        let payload = header_end + PAYLOAD_NONCE_LEN;
        for cut in [
            0,
            header_end - 1,
            header_end + 3,
            payload,
            payload + 10,
            payload + SEALED_CHUNK,
            payload + 2 * SEALED_CHUNK,
            sealed.len() - 1,
        ] {
            let got = ours(&id, &sealed[..cut], 1000);
            assert!(
                got.is_err(),
                "cut at {cut} of {} went unnoticed",
                sealed.len()
            );
        }
    }

    #[test]
    fn a_dropped_reordered_or_appended_chunk_is_refused() {
        let id = identity();
        let plain: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 249) as u8).collect();
        let sealed = seal(&id, &plain);
        let payload = sealed.windows(4).position(|w| w == b"--- ").unwrap() + 48 + 16;
        let chunk =
            |k: usize| &sealed[payload + k * SEALED_CHUNK..payload + (k + 1) * SEALED_CHUNK];
        let head = &sealed[..payload];
        // The exactly-full last chunk is marked last: dropping it leaves a stream whose
        // new final chunk was not sealed as last.
        let dropped = [head, chunk(0), chunk(1)].concat();
        let swapped = [head, chunk(1), chunk(0), chunk(2)].concat();
        let appended = [head, chunk(0), chunk(1), chunk(2), chunk(2)].concat();
        let mut empty_tail = sealed.clone();
        empty_tail.extend_from_slice(&[0u8; TAG]);
        // A reader that failed keeps failing, even if the caller reads on: here a forged
        // chunk is put before the genuine second one, which would open under the counter
        // the failed chunk did not use up.
        let forged = [
            head,
            chunk(0),
            &[0x55u8; SEALED_CHUNK][..],
            chunk(1),
            chunk(2),
        ]
        .concat();
        let mut r = open(&id, forged.as_slice()).unwrap();
        let mut buf = vec![0u8; READ_AHEAD];
        assert_eq!(
            r.read(&mut buf).unwrap(),
            CHUNK,
            "the first chunk is genuine"
        );
        assert!(r.read(&mut buf).is_err(), "the forged chunk");
        for _ in 0..3 {
            assert!(r.read(&mut buf).is_err(), "a read after a failed chunk");
        }
        for (what, bytes) in [
            ("dropped", dropped),
            ("swapped", swapped),
            ("appended", appended),
            ("empty tail", empty_tail),
        ] {
            assert!(ours(&id, &bytes, 4096).is_err(), "{what} went unnoticed");
            assert!(theirs(&id, &bytes).is_err(), "age refuses {what}");
        }
        assert_eq!(ours(&id, &sealed, 4096).unwrap(), plain);
    }

    #[test]
    fn an_endless_header_is_refused_without_reading_on() {
        let mut bytes = VERSION_LINE.to_vec();
        bytes.extend(std::iter::repeat_n(b'A', 1 << 20));
        assert!(open(&identity(), bytes.as_slice()).is_err());
    }
}
