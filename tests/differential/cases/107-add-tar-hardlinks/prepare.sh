mkdir -p t/h && echo x > t/h/a && ln t/h/a t/h/b && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar h && rm -rf t
