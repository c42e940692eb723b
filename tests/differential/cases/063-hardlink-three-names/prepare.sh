mkdir -p sub && ln a.txt b.txt && ln a.txt sub/c.txt
