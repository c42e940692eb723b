mkdir -p t/m && echo s > t/m/suid && echo p > t/m/priv && chmod 4755 t/m/suid && chmod 600 t/m/priv && chmod 710 t/m && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar m && rm -rf t
