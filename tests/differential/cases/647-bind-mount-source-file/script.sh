echo ran-script > /out
