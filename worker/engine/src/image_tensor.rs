//! Images to and from tensors, with the arithmetic of diffusers' `VaeImageProcessor`, so that
//! the same 8-bit pixels go in and come out as in the reference pipeline.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::EngineError;

/// An RGB image as a `[1, 3, H, W]` f32 tensor in [-1, 1], computed as diffusers does:
/// `x / 255` then `2 * x - 1`, both in f32.
pub fn rgb_to_tensor(image: &RgbImage, device: Device) -> Result<Tensor, EngineError> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(EngineError::InvalidInput(format!(
            "image is {width}x{height}"
        )));
    }
    let pixels = Tensor::f_from_slice(image.as_raw())?;
    let chw = pixels
        .f_view([i64::from(height), i64::from(width), 3])?
        .f_permute([2, 0, 1])?
        .f_to_kind(Kind::Float)?;
    let unit = chw.f_div_scalar(255.0)?;
    let signed = unit.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
    Ok(signed.f_unsqueeze(0)?.f_to_device(device)?)
}

/// A `[N, 3, H, W]` tensor in [-1, 1] (any float kind, any device) as N RGB images, computed as
/// diffusers does: `clamp(x / 2 + 0.5, 0, 1)` in f32, then `round(x * 255)` (half to even).
pub fn tensor_to_rgb(images: &Tensor) -> Result<Vec<RgbImage>, EngineError> {
    let size = images.size();
    let &[count, 3, height, width] = size.as_slice() else {
        return Err(EngineError::InvalidInput(format!(
            "expected an image batch of shape [N, 3, H, W], got {size:?}"
        )));
    };
    let unit = images
        .f_to_kind(Kind::Float)?
        .f_div_scalar(2.0)?
        .f_add_scalar(0.5)?
        .f_clamp(0.0, 1.0)?;
    let bytes = unit
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_to_device(Device::Cpu)?;
    let to_u32 =
        |v: i64| u32::try_from(v).map_err(|_| EngineError::InvalidInput(format!("dimension {v}")));
    let (width, height) = (to_u32(width)?, to_u32(height)?);
    (0..count)
        .map(|index| {
            let one = bytes.f_get(index)?.f_flatten(0, -1)?;
            let raw = Vec::<u8>::try_from(&one)?;
            RgbImage::from_raw(width, height, raw).ok_or_else(|| {
                EngineError::InvalidInput(format!("image {index} has the wrong byte count"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn round_trip_is_exact_for_every_byte_value() {
        let image = RgbImage::from_fn(256, 3, |x, y| image::Rgb([x as u8, 255 - x as u8, y as u8]));
        let tensor = rgb_to_tensor(&image, Device::Cpu).expect("to tensor");
        assert_eq!(tensor.size(), [1, 3, 3, 256]);
        let back = tensor_to_rgb(&tensor).expect("to image");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], image);
    }

    #[test]
    fn layout_is_channels_first_in_minus_one_to_one() {
        let image = gradient(5, 4);
        let tensor = rgb_to_tensor(&image, Device::Cpu).expect("to tensor");
        // pixel (x=3, y=2), green channel: 2 * 13 = 26
        let green = tensor.double_value(&[0, 1, 2, 3]);
        assert!((green - (26.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6, "{green}");
        assert!(tensor.max().double_value(&[]) <= 1.0);
        assert!(tensor.min().double_value(&[]) >= -1.0);
    }

    #[test]
    fn out_of_range_values_clamp_and_halves_round_to_even() {
        // -3 and 3 clamp to 0 and 255; 0.0 maps to exactly 127.5, which rounds to even: 128.
        let values = Tensor::from_slice(&[-3.0f32, 3.0, 0.0]).view([1, 3, 1, 1]);
        let out = tensor_to_rgb(&values).expect("to image");
        assert_eq!(out[0].get_pixel(0, 0).0, [0, 255, 128]);
    }

    #[test]
    fn rejects_wrong_shapes_and_empty_images() {
        let err = tensor_to_rgb(&Tensor::zeros([3, 4, 4], (Kind::Float, Device::Cpu)))
            .expect_err("rank 3");
        assert!(err.to_string().contains("[N, 3, H, W]"), "{err}");
        let err = rgb_to_tensor(&RgbImage::new(0, 4), Device::Cpu).expect_err("empty");
        assert!(err.to_string().contains("0x4"), "{err}");
    }
}
