//! [`Payload`]: the bits a watermark carries, and their conversions (bytes MSB first, hex, bit
//! strings), as invisible-watermark's `WatermarkEncoder.set_by_bytes` / `set_by_bits` make them.

use std::fmt::Write as _;

use crate::error::WatermarkError;

/// The payload of Stable Diffusion's inpainting demo scripts (224 bits); the stage's default.
pub const DEFAULT_PAYLOAD: &[u8] = b"StableDiffusionV1-Inpainting";

/// The payload of CompVis's txt2img script (136 bits), for detecting images made with it.
pub const TXT2IMG_PAYLOAD: &[u8] = b"StableDiffusionV1";

/// The bits a watermark carries. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    bits: Vec<bool>,
}

impl Default for Payload {
    /// [`DEFAULT_PAYLOAD`].
    fn default() -> Self {
        Self {
            bits: bytes_to_bits(DEFAULT_PAYLOAD),
        }
    }
}

impl Payload {
    /// The bits of `bytes`, most significant bit of each byte first (`np.unpackbits`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WatermarkError> {
        Self::from_bits(bytes_to_bits(bytes))
    }

    /// These bits, in order.
    pub fn from_bits(bits: impl Into<Vec<bool>>) -> Result<Self, WatermarkError> {
        let bits = bits.into();
        if bits.is_empty() {
            return Err(WatermarkError::EmptyPayload);
        }
        Ok(Self { bits })
    }

    /// The bytes written in hex (upper or lower case, even length), like `set_by_b16`.
    pub fn from_hex(hex: &str) -> Result<Self, WatermarkError> {
        Self::from_bytes(&parse_hex(hex)?)
    }

    /// A string of `0` and `1` characters, like `set_by_bits`.
    pub fn from_bit_str(bits: &str) -> Result<Self, WatermarkError> {
        let bits = bits
            .chars()
            .map(|c| match c {
                '0' => Ok(false),
                '1' => Ok(true),
                other => Err(WatermarkError::InvalidPayload(format!(
                    "bit strings hold only 0 and 1, found {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_bits(bits)
    }

    /// The bits.
    pub fn bits(&self) -> &[bool] {
        &self.bits
    }

    /// Number of bits (never 0).
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    /// Always false: a payload has at least one bit. (Here for clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// The bits packed into bytes, MSB first, the last byte padded with 0-bits (`np.packbits`).
    pub fn to_bytes(&self) -> Vec<u8> {
        bits_to_bytes(&self.bits)
    }

    /// [`Payload::to_bytes`] in lower-case hex.
    pub fn to_hex(&self) -> String {
        to_hex(&self.to_bytes())
    }

    /// The bits as a string of `0` and `1`.
    pub fn to_bit_str(&self) -> String {
        self.bits
            .iter()
            .map(|&b| if b { '1' } else { '0' })
            .collect()
    }
}

/// The bits of `bytes`, MSB first.
pub fn bytes_to_bits(bytes: &[u8]) -> Vec<bool> {
    bytes
        .iter()
        .flat_map(|&byte| (0..8).rev().map(move |i| byte >> i & 1 == 1))
        .collect()
}

/// `bits` packed MSB first; a last partial byte is padded with 0-bits.
pub fn bits_to_bytes(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &bit)| byte | (u8::from(bit) << (7 - i)))
        })
        .collect()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, WatermarkError> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(WatermarkError::InvalidPayload(format!(
            "hex payload has an odd number of digits ({})",
            digits.len()
        )));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => Ok(high << 4 | low),
                _ => Err(WatermarkError::InvalidPayload(format!(
                    "`{}` is not a hex byte",
                    String::from_utf8_lossy(pair).escape_debug()
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_msb_first() {
        let payload = Payload::from_bytes(&[0b1000_0001, 0x40]).expect("payload");
        assert_eq!(payload.to_bit_str(), "1000000101000000");
        assert_eq!(payload.to_hex(), "8140");
    }

    #[test]
    fn default_is_the_inpainting_scripts_payload() {
        let payload = Payload::default();
        assert_eq!(payload.len(), 224);
        assert_eq!(payload.to_bytes(), DEFAULT_PAYLOAD);
        assert_eq!(
            payload.to_hex(),
            "537461626c65446966667573696f6e56312d496e7061696e74696e67"
        );
    }

    #[test]
    fn hex_and_bit_strings_parse() {
        assert_eq!(
            Payload::from_hex("537461626C65").expect("hex").to_bytes(),
            b"Stable"
        );
        assert!(Payload::from_hex("abc").is_err());
        assert!(Payload::from_hex("zz").is_err());
        assert!(Payload::from_hex("+f").is_err());
        assert!(Payload::from_hex("").is_err());
        let bits = Payload::from_bit_str("10110").expect("bits");
        assert_eq!(bits.bits(), [true, false, true, true, false]);
        assert_eq!(bits.to_hex(), "b0");
        assert!(Payload::from_bit_str("102").is_err());
        assert!(matches!(
            Payload::from_bits(Vec::new()),
            Err(WatermarkError::EmptyPayload)
        ));
    }
}
