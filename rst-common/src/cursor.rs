//! A bounds-checked view of packet bytes.

/// Marker for header layouts that can be read straight out of packet memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only `u8` and `[u8; N]` fields (alignment 1, no
/// padding) and accept every bit pattern, so a reference to them is valid at any byte offset.
pub unsafe trait Header: Sized {}

/// Packet bytes that can only be read through bounds checks.
///
/// In the kernel this wraps the XDP context (`data` .. `data_end`), on the host a `&[u8]`.
/// Implementations must return `None` unless all of `offset .. offset + size_of::<T>()` lies
/// inside the packet's readable bytes.
pub trait Cursor {
    fn header<T: Header>(&self, offset: usize) -> Option<&T>;
}

impl Cursor for [u8] {
    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes, and `Header` guarantees that T has
        // alignment 1 and that every bit pattern is a valid T.
        Some(unsafe { &*bytes.as_ptr().cast::<T>() })
    }
}
