# copyheavy: COPY of a big context (5,000 small files + 3 x 50 MiB incompressible files, 171 MB).
ARG BASE
FROM ${BASE}
COPY . /data/
RUN find /data -type f | wc -l > /data-count.txt && du -s /data >> /data-count.txt
