//! The few constructions Coffer builds from audited primitives (RustCrypto, ring, dalek):
//! HKDF-SHA256 and HMAC-SHA256 helpers, XChaCha20-Poly1305 with bound associated data,
//! and a sealed box to an X25519 public key. Formats are in docs/FORMAT.md.
//!
//! XChaCha20-Poly1305 is the composition draft-irtf-cfrg-xchacha-03 §2.3 defines:
//! HChaCha20 (RustCrypto `chacha20`) of the key and the first 16 nonce bytes gives a
//! subkey, and ChaCha20-Poly1305 (RFC 8439, ring's assembly) under that subkey with the
//! nonce `0x00000000 || last 8 nonce bytes` does the rest. The bytes are those of
//! RustCrypto's `XChaCha20Poly1305`, which the tests check against it and the draft's
//! vector. ring is used because metadata values are small and opened by the thousand:
//! RustCrypto's runtime-detected AVX2 Poly1305 spends about 1.3 µs setting up per value
//! (its intrinsics are not inlined), so a 20-byte flags value took 1.7 µs to open against
//! 0.3 µs with ring (docs/SECURITY.md §9, deviation (f)).

use crate::secret::{Secret32, SecretBytes};
use chacha20::cipher::consts::U10;
use chacha20::hchacha;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Version byte that starts every XChaCha20-Poly1305 sealed value.
pub const AEAD_V1: u8 = 1;
/// Version byte that starts every sealed box.
pub const BOX_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Authentication failed: the value was altered, belongs elsewhere, or the key is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailed;

/// HKDF-SHA256 (RFC 5869) expanding `ikm` to 32 bytes under `info`.
pub fn hkdf32(ikm: &[u8], salt: Option<&[u8]>, info: &[u8]) -> Secret32 {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let mut out = [0u8; 32];
    hk.expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let s = Secret32::new(out);
    zeroize::Zeroize::zeroize(&mut out);
    s
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`, each length-prefixed so that
/// no two different part lists produce the same input.
pub fn hmac32(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Associated data binding a sealed value to its place: length-prefixed fields.
#[derive(Default)]
pub struct Aad(Vec<u8>);

impl Aad {
    pub fn new(context: &str) -> Self {
        // Room for the usual fields at once: this runs for every sealed value opened.
        Aad(Vec::with_capacity(128)).field(context.as_bytes())
    }
    pub fn field(mut self, bytes: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn u32(self, v: u32) -> Self {
        self.field(&v.to_be_bytes())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The ChaCha20-Poly1305 key and nonce that XChaCha20-Poly1305 under `key` with the
/// 192-bit `nonce` comes down to (draft-irtf-cfrg-xchacha-03 §2.3).
fn xchacha(key: &Secret32, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
    let (head, tail) = nonce.split_at(16);
    let mut sub = hchacha::<U10>(key.expose().into(), head.into());
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, sub.as_slice())
        .expect("a 32-byte key is a ChaCha20-Poly1305 key");
    zeroize::Zeroize::zeroize(sub.as_mut_slice());
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(tail);
    (LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n))
}

/// XChaCha20-Poly1305 under `key` with a random 192-bit nonce:
/// `0x01 || nonce(24) || ciphertext || tag(16)`.
pub fn seal(key: &Secret32, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let (k, n) = xchacha(key, &nonce);
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(AEAD_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = k
        .seal_in_place_separate_tag(
            n,
            ring::aead::Aad::from(aad.as_bytes()),
            &mut out[1 + NONCE_LEN..],
        )
        .expect("ChaCha20-Poly1305 seals any in-memory input");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a value made by [`seal`] with the same key and associated data.
pub fn open(key: &Secret32, aad: &Aad, sealed: &[u8]) -> Result<SecretBytes, OpenFailed> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != AEAD_V1 {
        return Err(OpenFailed);
    }
    let nonce: &[u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
        .try_into()
        .map_err(|_| OpenFailed)?;
    let (k, n) = xchacha(key, nonce);
    // Decrypted in place in the buffer that is returned, so the plaintext is never in an
    // unwiped copy; a failed open wipes the ciphertext copy on drop as well.
    let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let len = k
        .open_in_place(n, ring::aead::Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| OpenFailed)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

fn box_key(shared: &[u8; 32], eph: &PublicKey, recipient: &PublicKey) -> Secret32 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    hkdf32(shared, Some(&salt), b"coffer/v1/box")
}

/// Seals to an X25519 public key (ECIES: ephemeral X25519, HKDF-SHA256, XChaCha20-Poly1305):
/// `0x01 || ephemeral public key(32) || seal(...)`. Used by delivery, which holds only the
/// recipient's public key.
pub fn seal_to(recipient: &PublicKey, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
    let eph = EphemeralSecret::random_from_rng(rand::rngs::OsRng);
    let eph_pub = PublicKey::from(&eph);
    let shared = eph.diffie_hellman(recipient);
    let key = box_key(shared.as_bytes(), &eph_pub, recipient);
    let mut out = Vec::with_capacity(1 + 32 + 1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(BOX_V1);
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(&seal(&key, aad, plaintext));
    out
}

/// Opens a value made by [`seal_to`] with the recipient's secret key.
pub fn open_from(
    secret: &StaticSecret,
    aad: &Aad,
    sealed: &[u8],
) -> Result<SecretBytes, OpenFailed> {
    if sealed.len() < 1 + 32 || sealed[0] != BOX_V1 {
        return Err(OpenFailed);
    }
    let eph_bytes: [u8; 32] = sealed[1..33].try_into().map_err(|_| OpenFailed)?;
    let eph_pub = PublicKey::from(eph_bytes);
    let shared = secret.diffie_hellman(&eph_pub);
    // A low-order ephemeral point gives an all-zero shared secret: refuse it.
    if !shared.was_contributory() {
        return Err(OpenFailed);
    }
    let key = box_key(shared.as_bytes(), &eph_pub, &PublicKey::from(secret));
    open(&key, aad, &sealed[33..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hexs(b: &[u8]) -> String {
        coffer_types::hex(b)
    }

    #[test]
    fn hkdf_matches_rfc5869_test_case_1() {
        // RFC 5869 Appendix A.1 (first 32 bytes of OKM).
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf32(&ikm, Some(&salt), &info);
        assert_eq!(
            hexs(okm.expose()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_test_case_2_without_prefixing() {
        // Our hmac32 length-prefixes parts; check the primitive under it with RFC 4231 §4.3.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(
            hexs(&out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // And the prefixing separates ("ab","c") from ("a","bc").
        assert_ne!(hmac32(b"k", &[b"ab", b"c"]), hmac32(b"k", &[b"a", b"bc"]));
    }

    #[test]
    fn seal_open_round_trip_and_every_flipped_byte_fails() {
        let key = Secret32::random();
        let aad = Aad::new("test").field(b"row-1");
        let sealed = seal(&key, &aad, b"mailbox name");
        assert_eq!(
            open(&key, &aad, &sealed).unwrap().as_slice(),
            b"mailbox name"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&key, &aad, &bad), Err(OpenFailed), "byte {i}");
        }
        assert_eq!(
            open(&key, &Aad::new("test").field(b"row-2"), &sealed),
            Err(OpenFailed)
        );
        assert_eq!(open(&Secret32::random(), &aad, &sealed), Err(OpenFailed));
        assert_eq!(open(&key, &aad, &sealed[..10]), Err(OpenFailed));
    }

    #[test]
    fn sealed_box_round_trip_and_tamper() {
        let sk = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let pk = PublicKey::from(&sk);
        let aad = Aad::new("meta").field(b"m1");
        let sealed = seal_to(&pk, &aad, b"envelope");
        assert_eq!(
            open_from(&sk, &aad, &sealed).unwrap().as_slice(),
            b"envelope"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert!(open_from(&sk, &aad, &bad).is_err(), "byte {i}");
        }
        let other = StaticSecret::random_from_rng(rand::rngs::OsRng);
        assert!(open_from(&other, &aad, &sealed).is_err());
        // An all-zero (low-order) ephemeral key is refused.
        let mut zero = sealed.clone();
        zero[1..33].fill(0);
        assert!(open_from(&sk, &aad, &zero).is_err());
    }

    #[test]
    fn xchacha_known_answer() {
        // draft-irtf-cfrg-xchacha-03 §A.3.1 test vector, through the construction we use.
        let key: [u8; 32] = (0x80..=0x9f).collect::<Vec<u8>>().try_into().unwrap();
        let nonce: [u8; 24] = (0x40..=0x57).collect::<Vec<u8>>().try_into().unwrap();
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let (k, n) = xchacha(&Secret32::new(key), &nonce);
        let mut ct = msg.to_vec();
        let tag = k
            .seal_in_place_separate_tag(n, ring::aead::Aad::from(&aad), &mut ct)
            .unwrap();
        assert_eq!(
            hexs(&ct),
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
             21f9664c97637da9768812f615c68b13b52e"
        );
        assert_eq!(hexs(tag.as_ref()), "c0875924c1c7987947deafd8780acf49");
    }

    /// Our XChaCha20-Poly1305 and RustCrypto's give the same bytes and open each other's,
    /// for every length around the 64-byte block and Poly1305's 16-byte boundaries.
    #[test]
    fn xchacha_matches_rustcrypto_both_ways() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let key = Secret32::random();
        let reference = XChaCha20Poly1305::new(key.expose().into());
        for len in (0..300).chain([1000, 4096, 65_537]) {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let aad = Aad::new("cross").u32(len as u32);
            let ours = seal(&key, &aad, &msg);
            let nonce = XNonce::from_slice(&ours[1..1 + NONCE_LEN]);
            let theirs = reference
                .encrypt(
                    nonce,
                    Payload {
                        msg: &msg,
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            assert_eq!(&ours[1 + NONCE_LEN..], theirs.as_slice(), "length {len}");
            let opened = reference
                .decrypt(
                    nonce,
                    Payload {
                        msg: &ours[1 + NONCE_LEN..],
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            assert_eq!(opened, msg);
            let mut made = vec![AEAD_V1];
            made.extend_from_slice(nonce);
            made.extend_from_slice(&theirs);
            assert_eq!(open(&key, &aad, &made).unwrap().as_slice(), msg.as_slice());
        }
    }
}
