echo plain > a.txt && gzip -n a.txt
