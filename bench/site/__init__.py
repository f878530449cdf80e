"""`repbench report`: a static HTML site from run records (bench/site/build.py), opened from the file system."""
