chmod 600 secret && chmod 444 ro && chmod 000 none && chmod 664 grp
