"""Paragraphs with one exact fact each and a question on it (the planted-fact runs' data)."""

# Paragraphs in the style of techdocs man pages, each with one planted exact fact and a question on it.
P = [
 ("zstd", "The --long option enables long distance matching with a window of 2^27 bytes. It raises the "
  "memory needed to decompress the file. The window size can be given as --long=windowLog; the largest "
  "value accepted is 31. Long distance matching helps most on large files that repeat content far apart.",
  "What is the largest windowLog value --long accepts?", "31"),
 ("rsync", "The --timeout option sets the maximum I/O timeout in seconds. If no data is transferred for "
  "the specified time then rsync will exit. The default is 0, which means no timeout. The --contimeout "
  "option sets the amount of time rsync waits for its connection to a daemon to succeed.",
  "What is the default value of rsync's --timeout option?", "0"),
 ("gzip", "Compression is always performed, even if the compressed file is slightly larger than the original. "
  "The worst case expansion is a few bytes for the gzip file header, plus 5 bytes every 32K block, or an "
  "expansion ratio of 0.015% for large files. gzip preserves the mode, ownership and timestamps of files.",
  "How many bytes does gzip add every 32K block in the worst case?", "5 bytes"),
 ("make", "The -j option specifies the number of jobs (commands) to run simultaneously. If there is more "
  "than one -j option, the last one is effective. If the -j option is given without an argument, make will "
  "not limit the number of jobs that can run simultaneously. The -l option stops new jobs while the load "
  "average is at least the given number.",
  "Which make option stops new jobs while the load average is at least a given number?", "-l"),
 ("xxd", "The -c option sets the number of octets per line, 16 by default. The maximum is 256. With -p, "
  "the default is 30 octets per line, and with -i it is 12. The -g option separates the output of every "
  "given number of bytes by a whitespace, 2 by default.",
  "What is the maximum number of octets per line for xxd -c?", "256"),
 ("bzip2", "bzip2 compresses files using the Burrows-Wheeler block sorting text compression algorithm and "
  "Huffman coding. The block size can be set with the flags -1 to -9, which give block sizes of 100k to "
  "900k. Decompression needs about 3700 kbytes of memory for the largest block size.",
  "Which algorithm does bzip2 use besides Huffman coding?", "Burrows-Wheeler"),
]
