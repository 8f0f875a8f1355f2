//! A small PNG encoder for the plots (8-bit RGB), so that the bench needs no image crate: the
//! `image`/`png` crates would enable a feature of a crate that wasmtime also uses (`crc32fast`),
//! and every `--workspace` build (`make lint`, `make test`) would then compile wasmtime a second
//! time, with other features than `make build`.
//!
//! Plots are mostly runs of one colour, so each row is filtered (PNG's `Sub` or `Up`, whichever
//! leaves more zeros) and deflated with the fixed Huffman code, a run of equal bytes becoming one
//! literal and back-references at distance 1. A 1200×600 plot comes to some tens of kilobytes.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, ensure};

/// Writes `rgb` (`width * height * 3` bytes, rows top to bottom) as a PNG file.
pub fn write(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let stride = width as usize * 3;
    ensure!(rgb.len() == stride * height as usize, "image size mismatch");
    let mut raw = Vec::with_capacity(rgb.len() + height as usize);
    let zero_row = vec![0u8; stride];
    for y in 0..height as usize {
        let row = &rgb[y * stride..(y + 1) * stride];
        let above = if y == 0 {
            &zero_row[..]
        } else {
            &rgb[(y - 1) * stride..y * stride]
        };
        let sub: Vec<u8> = (0..stride)
            .map(|i| row[i].wrapping_sub(if i >= 3 { row[i - 3] } else { 0 }))
            .collect();
        let up: Vec<u8> = (0..stride).map(|i| row[i].wrapping_sub(above[i])).collect();
        let zeros = |v: &[u8]| v.iter().filter(|&&b| b == 0).count();
        if zeros(&up) >= zeros(&sub) {
            raw.push(2);
            raw.extend_from_slice(&up);
        } else {
            raw.push(1);
            raw.extend_from_slice(&sub);
        }
    }

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    file.write_all(b"\x89PNG\r\n\x1a\n")?;
    chunk(&mut file, b"IHDR", &ihdr)?;
    chunk(&mut file, b"IDAT", &zlib(&raw))?;
    chunk(&mut file, b"IEND", &[])?;
    file.flush()?;
    Ok(())
}

fn chunk(out: &mut impl Write, kind: &[u8; 4], data: &[u8]) -> Result<()> {
    out.write_all(&(data.len() as u32).to_be_bytes())?;
    out.write_all(kind)?;
    out.write_all(data)?;
    let mut crc = Crc32::default();
    crc.update(kind);
    crc.update(data);
    out.write_all(&crc.finish().to_be_bytes())?;
    Ok(())
}

/// CRC-32 (IEEE), as PNG chunks carry it.
#[derive(Default)]
struct Crc32(u32);

impl Crc32 {
    fn update(&mut self, bytes: &[u8]) {
        let mut crc = !self.0;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        self.0 = !crc;
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= 65_521;
        b %= 65_521;
    }
    (b << 16) | a
}

/// Bits written least significant first, as deflate packs them.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which deflate stores most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The fixed Huffman code of a literal/length symbol (RFC 1951, 3.2.6).
fn symbol(bits: &mut Bits, sym: u32) {
    match sym {
        0..=143 => bits.code(0x30 + sym, 8),
        144..=255 => bits.code(0x190 + sym - 144, 9),
        256..=279 => bits.code(sym - 256, 7),
        _ => bits.code(0xC0 + sym - 280, 8),
    }
}

/// Base lengths of the length symbols 257..=285, and their extra bits.
const LENGTH_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// A back-reference of `len` (3..=258) bytes at distance 1.
fn repeat(bits: &mut Bits, len: u32) {
    let i = LENGTH_BASE
        .iter()
        .rposition(|&base| base <= len)
        .unwrap_or(0);
    symbol(bits, 257 + i as u32);
    bits.put(len - LENGTH_BASE[i], LENGTH_EXTRA[i]);
    // Distance 1: distance code 0, five bits, no extra bits.
    bits.code(0, 5);
}

/// A zlib stream of one fixed-Huffman deflate block.
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    let mut i = 0;
    while i < data.len() {
        let byte = data[i];
        symbol(&mut bits, u32::from(byte));
        let mut run = 0;
        while i + 1 + run < data.len() && data[i + 1 + run] == byte {
            run += 1;
        }
        i += 1 + run;
        while run >= 3 {
            let len = run.min(258);
            // Never leave a remainder of 1 or 2 that a back-reference cannot take.
            let len = if run - len > 0 && run - len < 3 {
                len - 3
            } else {
                len
            };
            repeat(&mut bits, len as u32);
            run -= len;
        }
        for _ in 0..run {
            symbol(&mut bits, u32::from(byte));
        }
    }
    symbol(&mut bits, 256);
    let mut out = vec![0x78, 0x01];
    out.extend(bits.finish());
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_references() {
        let mut crc = Crc32::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn runs_become_back_references() {
        let data = vec![7u8; 100_000];
        let z = zlib(&data);
        assert!(z.len() < 1_000, "{} bytes", z.len());
        assert_eq!(&z[z.len() - 4..], &adler32(&data).to_be_bytes());
    }
}
