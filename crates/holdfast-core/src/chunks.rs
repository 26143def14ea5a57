//! An append-only list kept in fixed-size chunks. It never moves what it already holds, so the
//! millionth push costs what the first did. A `Vec` doubles and copies everything when it fills:
//! with half a million orders that one push stalled the sale's writer for a fifth of a second.

/// Elements per chunk: large enough that the list of chunks stays small, small enough that
/// filling one is cheap.
const CHUNK: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Chunks<T> {
    pub fn new() -> Chunks<T> {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub fn push(&mut self, item: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks
            .last_mut()
            .expect("a chunk with room")
            .push(item);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The elements from `start` on (none when `start` is past the end).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .skip(start / CHUNK)
            .flatten()
            .skip(start % CHUNK)
    }
}

impl<'a, T> IntoIterator for &'a Chunks<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flatten()
    }
}

impl<T> FromIterator<T> for Chunks<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Chunks<T> {
        let mut chunks = Chunks::new();
        for item in items {
            chunks.push(item);
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_vec_across_chunk_edges() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let chunks: Chunks<usize> = (0..n).collect();
            let vec: Vec<usize> = (0..n).collect();
            assert_eq!(chunks.len(), n);
            assert_eq!(chunks.iter().copied().collect::<Vec<_>>(), vec);
            for start in [0, 1, CHUNK - 1, CHUNK, CHUNK + 3, n, n + 5] {
                let from: Vec<usize> = chunks.iter_from(start).copied().collect();
                assert_eq!(
                    from,
                    vec.get(start..).unwrap_or_default(),
                    "n {n} start {start}"
                );
            }
            for i in [0, CHUNK - 1, CHUNK, n.saturating_sub(1), n] {
                assert_eq!(chunks.get(i), vec.get(i));
            }
        }
    }
}
