//! Argon2id (RFC 9106) over a password, keyed with the server pepper, and its calibration.
//!
//! `s = Argon2id(password, salt, params, secret = pepper)`; the slot locator and the key
//! encryption key are HKDF expansions of `s` (CRYPTO.md, "Logging in").

use crate::pepper::Pepper;
use crate::primitives::hkdf32;
use crate::secret::Secret32;
use argon2::{Algorithm, Argon2, Params, Version};
pub use coffer_store::KdfParams;
use std::time::{Duration, Instant};

/// Default memory cost: 64 MiB, RFC 9106 §4's second recommended option.
pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
/// Calibration target for one derivation on the machine that runs `coffer init`.
pub const TARGET: Duration = Duration::from_millis(250);

/// A deliberately weak profile for test suites only. Never the default; the config names
/// it `insecure-fast-for-tests` so nobody picks it by accident.
pub const INSECURE_TEST_PARAMS: KdfParams = KdfParams {
    memory_kib: 64,
    time_cost: 1,
    parallelism: 1,
};

/// Cost parameters the vault uses for new slots.
#[derive(Debug, thiserror::Error)]
#[error("invalid Argon2id parameters: {0}")]
pub struct KdfError(String);

pub(crate) fn argon2_params(p: &KdfParams) -> Result<Params, KdfError> {
    Params::new(p.memory_kib, p.time_cost, p.parallelism, Some(32))
        .map_err(|e| KdfError(e.to_string()))
}

/// Checks parameters before they are stored (config values, calibration results).
pub fn validate(p: &KdfParams) -> Result<(), KdfError> {
    argon2_params(p).map(|_| ())
}

/// The stretched secret `s` for one typed secret.
pub fn stretch(
    pepper: &Pepper,
    password: &[u8],
    salt: &[u8; 16],
    params: &KdfParams,
) -> Result<Secret32, KdfError> {
    let argon = Argon2::new_with_secret(
        pepper.argon2_secret().expose(),
        Algorithm::Argon2id,
        Version::V0x13,
        argon2_params(params)?,
    )
    .map_err(|e| KdfError(e.to_string()))?;
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| KdfError(e.to_string()))?;
    let s = Secret32::new(out);
    zeroize::Zeroize::zeroize(&mut out);
    Ok(s)
}

/// The two values a slot needs from `s`.
pub struct SlotKeys {
    pub locator: [u8; 32],
    pub kek: Secret32,
}

pub fn slot_keys(s: &Secret32) -> SlotKeys {
    let locator = *hkdf32(s.expose(), None, b"coffer/slot-locator").expose();
    SlotKeys {
        locator,
        kek: hkdf32(s.expose(), None, b"coffer/slot-kek"),
    }
}

/// Chooses the time cost so that one derivation at `memory_kib` takes about `target` here.
/// Starts at t=1, measures, scales, and verifies; the result is at least RFC 9106's t=1.
pub fn calibrate(memory_kib: u32, target: Duration) -> Result<(KdfParams, Duration), KdfError> {
    let pepper = Pepper::from_bytes([0x5a; 32]);
    let salt = [0x11u8; 16];
    let measure = |t: u32| -> Result<Duration, KdfError> {
        let p = KdfParams {
            memory_kib,
            time_cost: t,
            parallelism: 1,
        };
        let start = Instant::now();
        stretch(&pepper, b"calibration", &salt, &p)?;
        Ok(start.elapsed())
    };
    measure(1)?; // warm the allocator
    let one = measure(1)?.max(Duration::from_micros(1));
    let mut t = ((target.as_secs_f64() / one.as_secs_f64()).round() as u32).clamp(1, 64);
    let mut took = measure(t)?;
    // One correction step if the estimate was far off (memory bandwidth is not linear).
    if took > target.mul_f64(1.3) && t > 1 {
        t -= 1;
        took = measure(t)?;
    } else if took < target.mul_f64(0.7) {
        t += 1;
        took = measure(t)?;
    }
    Ok((
        KdfParams {
            memory_kib,
            time_cost: t,
            parallelism: 1,
        },
        took,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_matches_rfc9106_test_vector() {
        // RFC 9106 §5.3: Argon2id, m=32 KiB, t=3, p=4, 32-byte tag, with secret and AD.
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .output_len(32)
            .data(argon2::AssociatedData::new(&[4u8; 12]).unwrap())
            .build()
            .unwrap();
        let argon = Argon2::new_with_secret(&[3u8; 8], Algorithm::Argon2id, Version::V0x13, params)
            .unwrap();
        let mut out = [0u8; 32];
        argon
            .hash_password_into(&[1u8; 32], &[2u8; 16], &mut out)
            .unwrap();
        assert_eq!(
            coffer_types::hex(&out),
            "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
        );
    }

    #[test]
    fn stretch_depends_on_every_input() {
        let p = INSECURE_TEST_PARAMS;
        let pepper = Pepper::from_bytes([1; 32]);
        let base = stretch(&pepper, b"pw", &[0; 16], &p).unwrap();
        // Regression known answer for Coffer's own chain (pepper as Argon2 secret).
        assert_eq!(coffer_types::hex(base.expose()), KAT_STRETCH);
        let other_pepper = stretch(&Pepper::from_bytes([2; 32]), b"pw", &[0; 16], &p).unwrap();
        let other_salt = stretch(&pepper, b"pw", &[1; 16], &p).unwrap();
        let other_pw = stretch(&pepper, b"pW", &[0; 16], &p).unwrap();
        for o in [other_pepper, other_salt, other_pw] {
            assert_ne!(o.expose(), base.expose());
        }
        let keys = slot_keys(&base);
        assert_ne!(&keys.locator, keys.kek.expose());
    }

    #[test]
    fn calibration_lands_near_its_target() {
        let (p, took) = calibrate(1024, Duration::from_millis(20)).unwrap();
        assert!(p.time_cost >= 1);
        assert!(took < Duration::from_millis(200), "{took:?}");
    }

    const KAT_STRETCH: &str = "455a3b4253978a9f3c8e66a4755142e7d493117f73da3480fbe61f330a837b30";
}
