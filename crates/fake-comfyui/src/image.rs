//! Small RGB image batches for the fake's image nodes: creation, inversion,
//! scaling, PNG encoding (with ComfyUI's `prompt`/`workflow` text chunks)
//! and PNG decoding for LoadImage and `/view?channel=`.
//!
//! Pure computation on bytes; file writes are the caller's business.

use std::io::Cursor;

/// The most bytes one batch may hold; bigger requests fail like an
/// out-of-memory allocation instead of exhausting the test machine.
pub(crate) const MAX_BATCH_BYTES: u64 = 256 * 1024 * 1024;

/// A batch of same-sized 8-bit RGB images (ComfyUI's `IMAGE` tensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageBatch {
    /// Width in pixels.
    pub(crate) width: u32,
    /// Height in pixels.
    pub(crate) height: u32,
    /// One `width * height * 3` buffer per image.
    pub(crate) frames: Vec<Vec<u8>>,
}

/// A batch of 8-bit masks (ComfyUI's `MASK` tensor, 255 = 1.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MaskBatch {
    /// Width in pixels.
    pub(crate) width: u32,
    /// Height in pixels.
    pub(crate) height: u32,
    /// One `width * height` buffer per mask.
    pub(crate) frames: Vec<Vec<u8>>,
}

/// The error torch would raise for an allocation this size.
fn oom(bytes: u64) -> String {
    format!(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate {bytes} bytes."
    )
}

/// Checks that a batch of this shape fits the fake's memory budget and
/// returns the bytes of one frame.
fn check_size(width: u32, height: u32, batch: u64) -> Result<usize, String> {
    let frame = u128::from(width) * u128::from(height) * 3;
    let bytes = frame * u128::from(batch);
    if bytes > u128::from(MAX_BATCH_BYTES) {
        return Err(oom(
            u64::try_from(bytes.saturating_mul(4)).unwrap_or(u64::MAX)
        ));
    }
    usize::try_from(frame).map_err(|_| oom(u64::MAX))
}

impl ImageBatch {
    /// `EmptyImage`: `batch` images filled with `color` (0xRRGGBB).
    pub(crate) fn filled(width: u32, height: u32, batch: u64, color: u32) -> Result<Self, String> {
        let size = check_size(width, height, batch)?;
        let rgb = [(color >> 16) as u8, (color >> 8) as u8, color as u8];
        let frame: Vec<u8> = rgb.iter().copied().cycle().take(size).collect();
        Ok(Self {
            width,
            height,
            frames: vec![frame; batch as usize],
        })
    }

    /// `ImageInvert`: `1.0 - x` on every channel.
    pub(crate) fn inverted(&self) -> Self {
        Self {
            width: self.width,
            height: self.height,
            frames: self
                .frames
                .iter()
                .map(|f| f.iter().map(|v| 255 - v).collect())
                .collect(),
        }
    }

    /// `ImageScale`: resizes to `width`x`height` (0 keeps the aspect ratio
    /// from the other side), optionally center-cropping to the target
    /// aspect first. `method` picks the filter; bicubic and lanczos are
    /// approximated by bilinear.
    pub(crate) fn scaled(
        &self,
        method: &str,
        width: u32,
        height: u32,
        center_crop: bool,
    ) -> Result<Self, String> {
        if width == 0 && height == 0 {
            return Ok(self.clone());
        }
        let (src_w, src_h) = (f64::from(self.width), f64::from(self.height));
        let width = if width == 0 {
            ((src_w * f64::from(height) / src_h).round_ties_even() as u32).max(1)
        } else {
            width
        };
        let height = if height == 0 {
            ((src_h * f64::from(width) / src_w).round_ties_even() as u32).max(1)
        } else {
            height
        };
        check_size(width, height, self.frames.len() as u64)?;
        let (mut x0, mut y0, mut cw, mut ch) = (0.0, 0.0, src_w, src_h);
        if center_crop {
            let old_aspect = src_w / src_h;
            let new_aspect = f64::from(width) / f64::from(height);
            if old_aspect > new_aspect {
                let x = ((src_w - src_w * (new_aspect / old_aspect)) / 2.0).round_ties_even();
                x0 = x;
                cw = src_w - 2.0 * x;
            } else if old_aspect < new_aspect {
                let y = ((src_h - src_h * (old_aspect / new_aspect)) / 2.0).round_ties_even();
                y0 = y;
                ch = src_h - 2.0 * y;
            }
        }
        let frames = self
            .frames
            .iter()
            .map(|frame| {
                resample(
                    frame,
                    self.width,
                    Window {
                        x0,
                        y0,
                        w: cw,
                        h: ch,
                    },
                    width,
                    height,
                    method,
                )
            })
            .collect();
        Ok(Self {
            width,
            height,
            frames,
        })
    }
}

/// The source rectangle a resize reads from.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Left edge, in source pixels.
    x0: f64,
    /// Top edge, in source pixels.
    y0: f64,
    /// Width, in source pixels.
    w: f64,
    /// Height, in source pixels.
    h: f64,
}

/// Resamples one RGB frame from `window` of the source into `dw`x`dh`.
fn resample(
    frame: &[u8],
    stride_w: u32,
    window: Window,
    dw: u32,
    dh: u32,
    method: &str,
) -> Vec<u8> {
    let sx = window.w / f64::from(dw);
    let sy = window.h / f64::from(dh);
    let max_x = (window.x0 + window.w - 1.0).max(window.x0);
    let max_y = (window.y0 + window.h - 1.0).max(window.y0);
    let pixel = |x: f64, y: f64, c: usize| -> f64 {
        let xi = x.clamp(window.x0, max_x) as usize;
        let yi = y.clamp(window.y0, max_y) as usize;
        f64::from(
            frame
                .get((yi * stride_w as usize + xi) * 3 + c)
                .copied()
                .unwrap_or(0),
        )
    };
    let mut out = Vec::with_capacity(dw as usize * dh as usize * 3);
    for y in 0..dh {
        for x in 0..dw {
            for c in 0..3 {
                let value = match method {
                    "nearest-exact" => pixel(
                        window.x0 + ((f64::from(x) + 0.5) * sx).floor(),
                        window.y0 + ((f64::from(y) + 0.5) * sy).floor(),
                        c,
                    ),
                    "area" if sx >= 1.0 && sy >= 1.0 => {
                        let (fx, fy) =
                            (window.x0 + f64::from(x) * sx, window.y0 + f64::from(y) * sy);
                        let (nx, ny) = (sx.ceil() as u32, sy.ceil() as u32);
                        let mut sum = 0.0;
                        for j in 0..ny {
                            for i in 0..nx {
                                sum += pixel(fx + f64::from(i), fy + f64::from(j), c);
                            }
                        }
                        sum / f64::from(nx * ny)
                    }
                    _ => {
                        let fx = (window.x0 + (f64::from(x) + 0.5) * sx - 0.5).max(window.x0);
                        let fy = (window.y0 + (f64::from(y) + 0.5) * sy - 0.5).max(window.y0);
                        let (x1, y1) = (fx.floor(), fy.floor());
                        let (tx, ty) = (fx - x1, fy - y1);
                        let top = pixel(x1, y1, c) * (1.0 - tx) + pixel(x1 + 1.0, y1, c) * tx;
                        let bottom =
                            pixel(x1, y1 + 1.0, c) * (1.0 - tx) + pixel(x1 + 1.0, y1 + 1.0, c) * tx;
                        top * (1.0 - ty) + bottom * ty
                    }
                };
                out.push(value.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// PNG color layouts the fake writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PngLayout {
    /// 8-bit RGB.
    Rgb,
    /// 8-bit RGBA.
    Rgba,
}

/// Encodes one frame as PNG with the given `tEXt` chunks. `fast` picks the
/// lightest compression (ComfyUI's `compress_level=1` for previews).
pub(crate) fn encode_png(
    width: u32,
    height: u32,
    layout: PngLayout,
    data: &[u8],
    text: &[(String, String)],
    fast: bool,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(match layout {
        PngLayout::Rgb => png::ColorType::Rgb,
        PngLayout::Rgba => png::ColorType::Rgba,
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(if fast {
        png::Compression::Fast
    } else {
        png::Compression::Balanced
    });
    for (keyword, value) in text {
        encoder
            .add_text_chunk(keyword.clone(), value.clone())
            .map_err(|e| e.to_string())?;
    }
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(data).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// A decoded PNG, normalized to 8-bit RGB plus an optional alpha plane.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    /// Width in pixels.
    pub(crate) width: u32,
    /// Height in pixels.
    pub(crate) height: u32,
    /// `width * height * 3` bytes.
    pub(crate) rgb: Vec<u8>,
    /// `width * height` bytes when the image has transparency.
    pub(crate) alpha: Option<Vec<u8>>,
}

/// Decodes a PNG file's bytes; the error reads like PIL's.
pub(crate) fn decode_png(bytes: &[u8]) -> Result<Decoded, String> {
    let cannot = || "cannot identify image file".to_owned();
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|_| cannot())?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    check_size(width, height, 1)?;
    let size = reader.output_buffer_size().ok_or_else(cannot)?;
    let mut buffer = vec![0; size];
    let info = reader.next_frame(&mut buffer).map_err(|_| cannot())?;
    let pixels = width as usize * height as usize;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(cannot()),
    };
    let mut rgb = Vec::with_capacity(pixels * 3);
    let mut alpha = (channels == 2 || channels == 4).then(|| Vec::with_capacity(pixels));
    for y in 0..height as usize {
        let row = buffer.get(y * info.line_size..).ok_or_else(cannot)?;
        for x in 0..width as usize {
            let px = row
                .get(x * channels..(x + 1) * channels)
                .ok_or_else(cannot)?;
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
            if let Some(alpha) = alpha.as_mut() {
                alpha.push(px[channels - 1]);
            }
        }
    }
    Ok(Decoded {
        width,
        height,
        rgb,
        alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_then_inverted() {
        let image = ImageBatch::filled(2, 1, 1, 0x102030).unwrap();
        assert_eq!(image.frames[0], vec![0x10, 0x20, 0x30, 0x10, 0x20, 0x30]);
        assert_eq!(image.inverted().frames[0][0], 0xef);
    }

    #[test]
    fn scale_keeps_aspect_when_one_side_is_zero() {
        let image = ImageBatch::filled(64, 48, 1, 0).unwrap();
        let scaled = image.scaled("bilinear", 32, 0, false).unwrap();
        assert_eq!((scaled.width, scaled.height), (32, 24));
        assert_eq!(scaled.frames[0].len(), 32 * 24 * 3);
        let cropped = image.scaled("nearest-exact", 16, 16, true).unwrap();
        assert_eq!(cropped.frames[0].len(), 16 * 16 * 3);
    }

    #[test]
    fn png_round_trip() {
        let image = ImageBatch::filled(3, 2, 1, 0xff0080).unwrap();
        let bytes = encode_png(
            3,
            2,
            PngLayout::Rgb,
            &image.frames[0],
            &[("prompt".to_owned(), "{}".to_owned())],
            false,
        )
        .unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoded = decode_png(&bytes).unwrap();
        assert_eq!(decoded.rgb, image.frames[0]);
        assert!(decoded.alpha.is_none());
    }

    #[test]
    fn oversized_batches_fail_instead_of_allocating() {
        assert!(ImageBatch::filled(16384, 16384, 4096, 0).is_err());
    }
}
