mkdir -p t/opt/app && echo x > t/opt/app/f && chmod 700 t/opt && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar opt && rm -rf t
