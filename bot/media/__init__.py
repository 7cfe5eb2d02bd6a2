"""Media files: checking input images by their bytes (`images`) and fitting videos to an
upload limit (`encode`). No Discord, no Segmind."""
