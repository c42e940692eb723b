mkdir -p t/s && ln -s /etc/passwd t/s/abs && ln -s ../../nowhere t/s/up && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar s && rm -rf t
