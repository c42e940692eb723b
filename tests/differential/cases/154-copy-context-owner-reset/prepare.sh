chown 1234:5678 a.txt && chown -R 42:43 d
