"""Reports a person can read: terminal tables and one self-contained HTML file with plots."""
