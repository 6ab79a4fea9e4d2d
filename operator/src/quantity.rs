//! Memory sizes as Kubernetes and the JVM write them, to check a ZooKeeper heap against its
//! container's memory limit and to size a default request from the heap.

const KI: u128 = 1024;

/// Bytes of a Kubernetes memory quantity (`512Mi`, `1G`, `1.5Gi`, `1e9`, `536870912`);
/// `None` for anything else. Sub-byte suffixes (`m`) make no sense for memory and are refused.
pub fn quantity_bytes(quantity: &str) -> Option<u128> {
    let quantity = quantity.trim();
    let split = quantity.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => KI,
        "Mi" => KI.pow(2),
        "Gi" => KI.pow(3),
        "Ti" => KI.pow(4),
        "Pi" => KI.pow(5),
        "Ei" => KI.pow(6),
        "k" => 1000,
        "M" => 1000u128.pow(2),
        "G" => 1000u128.pow(3),
        "T" => 1000u128.pow(4),
        "P" => 1000u128.pow(5),
        "E" => 1000u128.pow(6),
        exponent if exponent.starts_with(['e', 'E']) => 10u128.checked_pow(exponent[1..].parse().ok()?)?,
        _ => return None,
    };
    scaled(number, multiplier)
}

/// Bytes of a JVM size (`-Xmx` syntax: `256m`, `1g`, `512k`).
pub fn jvm_bytes(size: &str) -> Option<u128> {
    let size = size.trim();
    let (number, unit) = size.split_at(size.len().checked_sub(1)?);
    let multiplier = match unit {
        "k" | "K" => KI,
        "m" | "M" => KI.pow(2),
        "g" | "G" => KI.pow(3),
        _ => return None,
    };
    number.parse::<u128>().ok()?.checked_mul(multiplier)
}

/// `number` (digits, at most one point) times `multiplier`, rounded up to a whole byte.
fn scaled(number: &str, multiplier: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let fraction_value: u128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let fractional_bytes = (fraction_value.checked_mul(multiplier)?).div_ceil(scale);
    whole.checked_mul(multiplier)?.checked_add(fractional_bytes)
}

/// `bytes` as a quantity in whole mebibytes, rounded up.
pub fn mebibytes(bytes: u128) -> String {
    format!("{}Mi", bytes.div_ceil(KI.pow(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_memory_quantities_in_bytes() {
        let cases = [
            ("512Mi", Some(512 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(3 << 29)),
            ("1G", Some(1_000_000_000)),
            ("128974848", Some(128_974_848)),
            ("129e6", Some(129_000_000)),
            ("64k", Some(64_000)),
            ("", None),
            ("Mi", None),
            ("100m", None),
            ("1.2.3Gi", None),
            ("12Qi", None),
        ];
        for (quantity, bytes) in cases {
            assert_eq!(quantity_bytes(quantity), bytes, "{quantity:?}");
        }
    }

    #[test]
    fn jvm_sizes_in_bytes() {
        assert_eq!(jvm_bytes("256m"), Some(256 << 20));
        assert_eq!(jvm_bytes("1g"), Some(1 << 30));
        assert_eq!(jvm_bytes("512K"), Some(512 << 10));
        assert_eq!(jvm_bytes("256"), None);
        assert_eq!(jvm_bytes("m"), None);
        assert_eq!(jvm_bytes(""), None);
    }

    #[test]
    fn whole_mebibytes_rounded_up() {
        assert_eq!(mebibytes(384 << 20), "384Mi");
        assert_eq!(mebibytes((384 << 20) + 1), "385Mi");
    }
}
